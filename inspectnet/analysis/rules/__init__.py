"""Decision-tree rules over binarized filter activations (Elite BackProp, section 4.1)."""
