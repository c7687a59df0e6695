"""Test helpers: a loopback HTTP file server, a one-node SLURM cluster, finetuning runs, label images for stitching."""
