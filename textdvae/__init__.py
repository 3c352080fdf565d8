"""textdvae: discrete variational autoencoders for text."""
