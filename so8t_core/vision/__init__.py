"""Vision: tower loading, the visual adapter and adapter fusion, synthetic images, training (notebook 05)."""
