"""Image classification: class folders and CSVs, the augmenting data set, and the classifier with its base record."""
