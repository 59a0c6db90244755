"""Models: the zoo (timm, torchvision, shipped, saved folders), weight files, layer addresses, prediction."""
