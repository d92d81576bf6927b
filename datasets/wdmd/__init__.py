"""TFDS builder for the wdmd corpus: see wdmd_dataset_builder.py and README.md."""
