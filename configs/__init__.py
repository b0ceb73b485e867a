"""Run configs, one file per dataset: `--config=configs/<dataset>.py:model=<choice>[,cpu]`.

A package so that the dataset files import one another (`from configs import common`); the
trainer puts the repository root on the import path before it loads a config file from it.
"""
