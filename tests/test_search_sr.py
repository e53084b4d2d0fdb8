"""``--task sr``: the SR metrics (PSNR and SSIM on Y against closed forms), the offline data
(scikit-learn's photographs; imagefolder of high-resolution images and its errors), a model
that is not ×2 SR refused before any work, and a tiny search end to end on the host runner:
journal, PSNR beside the bicubic baseline, the latency input at the stated frame, resume."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from host.models.data import DataSpecError
from host.models.sr import (
    downscale,
    load_photos,
    load_sr_dataset,
    load_sr_folder,
    psnr_y,
    sr_scores,
    sr_tiny,
    ssim_y,
)
from host.search.journal import Journal

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def test_psnr_and_ssim_on_y_match_their_closed_forms():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 20, 24, generator=g) * 0.8 + 0.1
    d = 0.05  # every channel up by d: Y up by d · (65.481 + 128.553 + 24.966)
    want = 20 * math.log10(255 / (d * 219.0))
    assert psnr_y(hr + d, hr).tolist() == pytest.approx([want, want], abs=1e-4)  # float32
    assert psnr_y(hr, hr).min() > 90
    assert ssim_y(hr, hr).tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    # two flat images: SSIM = (2 μa μb + C1) / (μa² + μb² + C1)
    a, b = torch.full((1, 3, 16, 16), 0.3), torch.full((1, 3, 16, 16), 0.6)
    ya, yb = 16 + 0.3 * 219.0, 16 + 0.6 * 219.0
    c1 = (0.01 * 255) ** 2
    assert float(ssim_y(a, b)) == pytest.approx((2 * ya * yb + c1) / (ya ** 2 + yb ** 2 + c1))
    # the border is shaved: a wrong outer ring does not count
    worse = hr.clone()
    worse[..., :2, :] = 0
    assert float(psnr_y(worse, hr)[0]) > 90


def test_photos_split_pairs_and_bicubic_baseline():
    from sklearn.datasets import load_sample_images

    d = load_photos(32)
    assert d.task == "sr" and d.input_shape == (3, 16, 16)
    tr, va = d.train, d.val
    assert tr.x.shape[1:] == (3, 16, 16) and tr.y.shape[1:] == (3, 32, 32)
    assert torch.allclose(tr.x[:3], downscale(tr.y[:3]))
    # validation: the bottom quarter of each photograph, whole (train patches are above it)
    imgs = load_sample_images().images
    h = imgs[0].shape[0]
    cut = (h * 3 // 4) // 4 * 4
    want = torch.from_numpy(np.array(imgs[0][cut:cut + va.y.shape[2], :va.y.shape[3]])
                            ).permute(2, 0, 1).float() / 255
    assert va.y.shape[0] == 2 and torch.equal(va.y[0], want)
    assert va.y.shape[2] == (h - cut) // 4 * 4
    base = sr_scores(None, d)
    assert 28 < base.psnr < 36 and 0.6 < base.ssim < 0.9
    # sr_tiny starts as bilinear upscaling: below bicubic on these photographs
    assert sr_scores(sr_tiny(), d).psnr < base.psnr


def _png(path, w: int, h: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_imagefolder_of_hr_images_and_its_errors(tmp_path):
    from PIL import Image

    root = tmp_path / "hr"
    root.mkdir()
    for i in range(6):
        _png(root / f"{i}.png", 40 + 4 * i, 36, i)
    d = load_sr_dataset(f"imagefolder:{root}", 16)
    # every fifth image validates (4.png); the others give patches and their mirror images
    assert d.val.y.shape == (1, 3, 36, 36) and d.train.y.shape[1:] == (3, 16, 16)
    # 0.png (40×36): 7 × 6 patches at a stride of 4, then their mirror images
    assert torch.equal(d.train.y[0].flip(-1), d.train.y[42])
    assert torch.equal(d.train.y[0], torch.from_numpy(np.array(Image.open(root / "0.png"))
                                                      ).permute(2, 0, 1)[:, :16, :16] / 255)
    split = tmp_path / "split"
    for part, n in (("train", 2), ("val", 2)):
        (split / part).mkdir(parents=True)
        for i in range(n):
            _png(split / part / f"{i}.jpg", 48, 40, 10 + i)
    assert len(load_sr_dataset(f"imagefolder:{split}", 16).val) == 2

    def refused(spec: str, msg: str, patch: int = 16):
        with pytest.raises(DataSpecError, match=msg):
            load_sr_dataset(spec, patch)

    refused("digits", "for --task sr: expected photos")
    refused(f"imagefolder:{tmp_path / 'nope'}", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(f"imagefolder:{empty}", "no images")
    (root / "7.png").write_bytes(b"not a png")
    refused(f"imagefolder:{root}", r"cannot read .*7\.png as an image")
    (root / "7.png").unlink()
    refused(f"imagefolder:{root}", r"0\.png is 40×36, smaller than the 64×64 patches", 64)
    refused("photos", "must be a multiple of 4", 30)
    one = tmp_path / "one"
    one.mkdir()
    _png(one / "a.png", 40, 40, 0)
    with pytest.raises(DataSpecError, match="1 image"):
        load_sr_folder(one, 16)


def test_a_classifier_is_refused_for_sr_before_any_work(capsys, tmp_path):
    from host.cli import main

    out = tmp_path / "run"
    rc = main(["search", "--task", "sr", "--speedup", "2", "--model", "resnet18",
               "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "maps 1×3×8×8 to (1, 1000); --task sr needs a ×2" in err
    assert not out.exists()
    rc = main(["search", "--frame", "1280x720", "--speedup", "2", "--out", str(out)])
    assert rc == 2 and "--frame is for --task sr" in capsys.readouterr().err
    for frame, msg in (("1281x720", "positive multiples of the scale 2"),
                       ("720p", "WIDTHxHEIGHT of the output")):
        rc = main(["search", "--task", "sr", "--frame", frame, "--speedup", "2", "--out",
                   str(out)])
        assert rc == 2 and msg in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


@pytest.mark.host
def test_sr_search_end_to_end_reports_psnr_beside_bicubic_and_resumes(tmp_path, fresh_runner):
    from host.search import Search, SearchConfig

    cfg = SearchConfig(task="sr", model="host.models.sr:sr_tiny", dataset="photos",
                       image_size=16, frame=(64, 48), speedup=1.0, budget=2, batch=2,
                       pretrain_epochs=0.1, finetune_epochs=0.02, phase3_epochs=0.02,
                       final_epochs=0.02, runs=3, warmup=1, samples=16,
                       schemes=("unstructured", "filter"), filter_types=("keep", "1x1"))
    run = tmp_path / "run"
    s = Search(cfg, run, fresh_runner).run()
    recs = Journal(run).records()
    assert recs[0]["config"]["task"] == "sr" and recs[0]["config"]["lr"] == 2e-3
    assert s["input_shape"] == [1, 3, 24, 32]  # the 64×48 frame's input was timed
    base = s["baseline"]
    done = [r for r in recs if r["type"] == "candidate" and r["status"] == "done"]
    assert len(done) == 2 and all(20 < r["accuracy"] < 40 for r in done)  # PSNR, dB
    sr = s["phase3"]["sr"]
    assert sr["frame"] == "64x48" and sr["bicubic_psnr"] == base["psnr"]
    assert sr["gain_db"] == pytest.approx(sr["psnr"] - base["psnr"])
    assert 0 < sr["ssim"] < 1 and sr["psnr"] == pytest.approx(s["phase3"]["final_acc"],
                                                              abs=1e-6)
    model = torch.load(run / "final" / "model.pt", weights_only=False)
    assert model(torch.rand(1, 3, 10, 12)).shape == (1, 3, 20, 24)
    prof = json.loads((run / "final" / "profile.json").read_text())
    assert prof["sr"]["psnr"] == sr["psnr"]
    report = (run / "report.md").read_text()
    assert "## Super-resolution ×2" in report and "64×48 output frame (32×24 input)" in report
    assert f"| bicubic upscaling | {base['psnr']:.2f} dB |" in report
    assert "| | PSNR (Y) | latency (median) | |" in report
    # resumed: nothing evaluated again, the same final PSNR
    again = Search(cfg, run, fresh_runner, resume=True).run()
    started = [r for r in Journal(run).records() if r.get("status") == "started"]
    assert len(started) == 2
    assert again["phase3"]["sr"]["psnr"] == pytest.approx(sr["psnr"])


def test_sr_supernet_subnetworks_are_the_pruned_models_and_train_on_l1():
    """The weight-sharing supernet over the SR model's widths (the head and residual body are
    one channel group) and weight densities: a sub-network computes what the realized model
    does, training (Adam on L1) moves the shared weights, scores are PSNR in dB."""
    from host.models.sr import SRNet
    from host.models.train import TrainConfig
    from host.search import SearchConfig
    from host.search.space import SearchSpace
    from host.search.strategies.jcw import JcwEncoding
    from host.search.supernet import Supernet

    torch.manual_seed(0)
    model = SRNet(channels=16, blocks=1).eval()
    torch.nn.init.normal_(model.tail.weight, std=0.05)
    space = SearchSpace.build(model, torch.randn(1, 3, 12, 12), vector_width=8)
    cfg = SearchConfig(task="sr", jcw_bounds=(0.5, 0.5, 0.5, 0.3))
    data = load_photos(16)
    net = Supernet(space, model, data, cfg, TrainConfig(optimizer="adam", batch_size=16),
                   bounds=cfg.bounds())
    enc = JcwEncoding(space, cfg.bounds())
    rng = np.random.default_rng(0)
    cands = [enc.decode(enc.xl)] + [enc.decode(rng.integers(enc.xl, enc.xu + 1))
                                    for _ in range(3)]
    floor = space.realize(net.model, cands[0]).model
    assert floor.head.out_channels == 8 and floor.body[0].conv1.out_channels == 8
    x = torch.rand(2, 3, 10, 12)
    before = copy.deepcopy(net.model.state_dict())
    net.train_first(0.02, seed=1)
    assert not torch.equal(before["head.weight"], net.model.state_dict()["head.weight"])
    for c in cands:
        with torch.no_grad():
            torch.testing.assert_close(net.forward(x, c), space.realize(net.model, c).model(x),
                                       atol=1e-5, rtol=1e-5)
    psnr, err = net.score(cands[1])
    assert err is None and 20 < psnr < 40


@pytest.mark.host
def test_a_720p_frame_runs_on_the_runner_equal_to_pytorch(compiled, local_runner):
    """Issue 20, point 4: the SR model at a 1280×720 output (28 MiB per 32-channel
    activation, 13 tensors in one arena from the memory plan) runs on the runner over gRPC,
    equal to PyTorch, with 2 threads."""
    from zoo import rel_err, run_on_runner

    from host.models.sr import SRNet

    def factory():
        torch.manual_seed(3)
        m = SRNet().eval()
        torch.nn.init.normal_(m.tail.weight, std=0.05)  # not the bilinear start: all layers count
        return m

    bundle, model, x = compiled("sr_net_720p", factory, (1, 3, 360, 640))
    assert bundle.manifest.arena_bytes > 64 << 20
    assert max(t.nbytes for t in bundle.manifest.tensors) >= 28 << 20
    with torch.no_grad():
        want = model(x).numpy()
    got = run_on_runner(local_runner, bundle, x, 2)
    assert got.shape == (1, 3, 720, 1280)
    assert rel_err(got, want) <= 1e-3  # Winograd
