"""Models: the zoo (timm, torchvision, shipped, saved folders), weight files, layer addresses and model_state,
the decomposed head and the surgery that rebuilds saved models, prediction."""
