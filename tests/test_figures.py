"""Figures carry what they show (panels, titles, whether a map is constant) for the tests."""

import matplotlib.pyplot as plt
import numpy as np

from cvinterp.figures import read_contents, save


def test_saved_figures_say_what_they_show(tmp_path):
    fig, axes = plt.subplots(1, 4)
    axes[0].imshow(np.arange(16.0).reshape(4, 4))
    axes[0].set_title("varies")
    axes[1].imshow(np.zeros((4, 4)))
    axes[2].plot([0, 1], [1, 0])
    axes[3].set_visible(False)
    save(fig, tmp_path / "f.png")
    got = read_contents(tmp_path / "f.png")
    assert got == {"panels": 3, "titles": ["varies", "", ""], "images": 2, "constant_panels": [1]}
