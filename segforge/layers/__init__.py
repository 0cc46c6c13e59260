"""Building blocks: convolution blocks and the upsampling operators of the notes."""
