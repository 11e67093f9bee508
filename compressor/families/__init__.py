"""Families of models: one model per lambda, every member through the same recipe steps,
judged as an RD curve (BD-rate) against the baseline family and classical codecs.

members.py resolves and checks a recipe's members at plan time (no model is built);
judge.py turns the members' validation reports into curves, BD values and gate verdicts;
report.py writes the family report (report.json, report.md, rd.png, rd_msssim.png, speed.png).
"""
