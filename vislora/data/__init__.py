"""Training data: image decoding (`images`), class folders and CSV lists (`folders`), datasets and
transforms (`dataset`)."""
