"""Vision-language models: vision towers, projectors (registry), the composed model that splices image
tokens into any polm causal LM, image records and loaders, the collator, and evaluation."""
