"""The rehearsal profile: the paper profile run end to end on synthetic data in the real formats.

`synthetic` writes the datasets (ImageNet-style validation tree, Broden folder and zip, CIFAR-10
python tarball, PTB and WikiText-2 with part-of-speech tag files, Fashion-MNIST IDX files),
`serve` serves them over a local HTTP server, and `python -m cvinterp.rehearsal` composes the
rehearsal configuration (the paper profile with capped counts) and runs Snakemake on it.
"""
