"""Sweeps (`flythinker sweep`, README "Ablations (sweeps)"): a YAML file of points x seeds.

spec  the sweep file, validated before anything runs (points, seeds, references)
runs  running every point x seed in this process, and gathering finished runs into results
"""
