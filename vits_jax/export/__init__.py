"""Export a voice to the formats other runtimes load: Piper, Hugging Face, official VITS."""
