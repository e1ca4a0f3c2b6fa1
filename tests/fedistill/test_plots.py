"""The set grid: every image lands in its own cell, in its class's row, on a white frame."""

import torch

from fedistill.data import dataset_info
from fedistill.plots import mosaic, save_grid
from fedistill.synthetic import SyntheticSet


def test_mosaic_puts_each_image_in_its_cell():
    # image i is the constant i / 10, so a cell's value names the image drawn there
    images = (torch.arange(6, dtype=torch.float32) / 10).view(6, 1, 1, 1).expand(6, 1, 3, 4)
    rows = [torch.tensor([4, 0]), torch.tensor([5]), torch.tensor([], dtype=torch.long)]
    out = mosaic(images, rows, cols=2, pad=1)
    assert out.shape == (3 * 4 + 1, 2 * 5 + 1, 1)
    cell = lambda r, j: out[1 + r * 4 : 1 + r * 4 + 3, 1 + j * 5 : 1 + j * 5 + 4, 0]  # noqa: E731
    assert torch.all(cell(0, 0) == 0.4) and torch.all(cell(0, 1) == 0.0)
    assert torch.all(cell(1, 0) == 0.5)
    for empty in (cell(1, 1), cell(2, 0), cell(2, 1)):  # no image: background
        assert torch.all(empty == 1.0)
    assert torch.all(out[0] == 1.0) and torch.all(out[:, 0] == 1.0)  # the frame


def test_save_grid_writes_a_png(tmp_path):
    info = dataset_info("digits")
    x = torch.randn(20, 1, 8, 8)
    y = torch.arange(10).repeat(2)
    meta = dict(
        dataset="digits",
        mean=list(info.mean),
        std=list(info.std),
        method="dm",
        ipc=2,
        seed=0,
        iterations=1,
        num_classes=10,
    )
    path = save_grid(SyntheticSet(x, y, meta=meta), tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
