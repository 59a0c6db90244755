"""Models: the zoo, weight files, layer addresses and model_state, the decomposed head, surgery, prediction.

The zoo covers timm, torchvision, the shipped models and folders saved by inspectnet; the surgery
rebuilds saved models.
"""
