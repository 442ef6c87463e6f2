"""The method registry: name -> Method class (one file each). ``trainer/loop.py`` runs any of them."""

from trainer.methods.dfdpo import DFDPO
from trainer.methods.dmd import DMD
from trainer.methods.mogan import MoGAN
from trainer.methods.sft import SFT
from trainer.methods.vae import VAE
from trainer.methods.vdot import VDOT

METHODS = {
    "vae": VAE,
    "sft": SFT,
    "dmd": DMD,
    "mogan": MoGAN,
    "vdot": VDOT,
    "dfdpo": DFDPO,
}
