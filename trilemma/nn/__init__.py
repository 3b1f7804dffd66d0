"""The few shared network blocks: convolutional blocks for tokenizers, transformer blocks for generators."""
