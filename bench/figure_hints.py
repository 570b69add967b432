"""Figure for the README: input, hint layer, automatic and hinted SIGGRAPH17 results (RANDOM official-format weights:
the colours are not meaningful, only where hints act). Usage: .venv/bin/python bench/figure_hints.py OUT.png"""
import sys, tempfile, pathlib, numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from PIL import Image, ImageDraw
from skimage import data
from skimage.color import rgb2gray
from fake_colorizers import write_colorizer_pth
from fake_r101 import write_r101_pkl
from patchcolor.pipeline import Pipeline
from patchcolor.options import make_options
from patchcolor.prepare import SourceImage
d = pathlib.Path(tempfile.mkdtemp())
write_colorizer_pth("siggraph17", d, seed=2, with_num_batches_tracked=False)
write_colorizer_pth("eccv16", d, seed=1)
write_r101_pkl(d / "model_final_a3ec72.pkl", seed=3, bias_class=0)
pipe = Pipeline(d, device="cpu")
g = (rgb2gray(data.astronaut()) * 255).astype(np.uint8)
g = np.asarray(Image.fromarray(g).resize((384, 384), Image.BICUBIC))
src = SourceImage(g)
m = np.zeros((384, 384, 4), np.uint8)
for (x, y, rgb) in [(190, 300, (30, 60, 200)), (250, 120, (220, 170, 140)), (60, 80, (200, 40, 40))]:
    m[y - 4:y + 4, x - 4:x + 4] = (*rgb, 255)
o = make_options("default", colorizer="siggraph17", max_instances=3, saturation=2.0)
auto = pipe.run(src, o).image
hinted = pipe.run(src, o, hints=SourceImage(m[..., :3].copy(), m[..., 3].copy()))
over = np.repeat(g[..., None], 3, 2).copy()
a = m[..., 3:4] > 0
over = np.where(a, m[..., :3], over)
panels = [np.repeat(g[..., None], 3, 2), over, auto, hinted.image]
names = ["input (gray)", "hint layer (3 dabs)", "automatic (siggraph17)", f"with hints ({hinted.hint_count})"]
W = 384
canvas = Image.new("RGB", (4 * W + 30, W + 24), "white")
dr = ImageDraw.Draw(canvas)
for i, (p, n) in enumerate(zip(panels, names)):
    canvas.paste(Image.fromarray(p), (i * (W + 10), 24))
    dr.text((i * (W + 10) + 4, 5), n, fill="black")
canvas.save(sys.argv[1])
print("saved", sys.argv[1], hinted.hint_count, len(hinted.instances))
