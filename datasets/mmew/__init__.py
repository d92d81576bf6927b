"""TFDS builder for the mmew corpus: see mmew_dataset_builder.py and README.md."""
