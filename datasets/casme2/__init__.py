"""TFDS builder for the casme2 corpus: see casme2_dataset_builder.py and README.md."""
