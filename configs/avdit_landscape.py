r"""AVDiT on Landscape nature scenes, as MM-Diffusion lays the data out (SPEC §2).

The same geometry as configs/avdit_aist.py (64x64, 10 fps, 16 kHz, 17-frame 1.7 s clips, back to
back); the data is the TFDS dataset `av_folder/landscape`, prepared once from MM-Diffusion's folder
of mp4s (its `train/` and `test/` sub-folders are the splits):

  python -m avdit.data.prepare --dataset=landscape --manual_dir=/data/landscape \
      --data_dir=/data/tensorflow_datasets
  python -m avdit.main --config=configs/avdit_landscape.py \
      --config.data.data_dir=/data/tensorflow_datasets --workdir=/tmp/avdit_landscape

`DATA_DIR` (configs/avdit_aist.py) is a placeholder: pass the real TFDS data_dir with
--config.data.data_dir=... Variants: `default` and `tiny`, as in configs/avdit_aist.py.
"""
import ml_collections

from configs import avdit_aist


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  return avdit_aist.tfds_config(variant, "landscape")
