"""From noise to images: the samplers (Algorithm 2, respaced, DDIM, DPM-Solver++), classifier-free guidance,
``generate`` with a generator per image, sampling jobs that survive a kill, the output writers and latent
interpolation; editing (RePaint inpainting, SDEdit)."""

from .edit_jobs import Edit, inpaint, sdedit
from .editing import MASKS, RePaint, SDEdit, make_mask
from .generation import generate, sample_checkpoint
from .guidance import Guided, check_guidance, class_labels
from .interpolation import MIXES, interpolate
from .jobs import JobSpec, SampleJob, parse_seeds, reverse_process_pictures, sample_job
from .outputs import write_images
from .samplers import DDIM, SAMPLERS, SPACINGS, Ancestral, DPMSolverPP, Respaced, Sampler, SDEDPMSolverPP, make_sampler
from .settings import SamplingSettings, weights

__all__ = ["SAMPLERS", "SPACINGS", "make_sampler", "Sampler", "Ancestral", "Respaced", "DDIM", "DPMSolverPP",
           "SDEDPMSolverPP", "SamplingSettings", "weights", "generate", "sample_checkpoint", "Guided", "class_labels",
           "check_guidance", "JobSpec", "SampleJob", "sample_job", "parse_seeds", "reverse_process_pictures",
           "write_images", "MIXES", "interpolate", "inpaint", "sdedit", "Edit", "RePaint", "SDEdit", "make_mask",
           "MASKS"]
