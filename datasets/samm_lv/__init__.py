"""TFDS builder for the samm_lv corpus: see samm_lv_dataset_builder.py and README.md."""
