"""Training side of edge-rec: datasets, the synthetic world, baselines, teacher, student, pruning.

Submodules import torch only where a model is trained; the dataset and baseline code is numpy.
"""
