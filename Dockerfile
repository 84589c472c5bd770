# vffn-pretrain for GPU clusters.
#
# The NGC PyTorch image already carries CUDA, NCCL, transformer-engine and NVIDIA apex (built from source by
# NVIDIA; never `pip install apex`, which is an unrelated PyPI project), so the layer spec picks
# transformer-engine at run time.
#
#   docker build -t vffn-pretrain .
#   docker run --gpus all --ipc=host --rm -v $PWD/runs:/workspace/vffn-pretrain/runs vffn-pretrain \
#       torchrun --nproc_per_node=8 -m vffn_pretrain.train model=354m parallel.tp=2
#
# On SLURM with pyxis/enroot: set CONTAINER_IMAGE for launch/slurm/pretrain.sbatch.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1

WORKDIR /workspace/vffn-pretrain
COPY pyproject.toml README.md ./
COPY vffn_pretrain ./vffn_pretrain
COPY data_tools ./data_tools
COPY conf ./conf
COPY launch ./launch

# Keep the image's torch, transformer-engine and apex: install only what they lack. Editable, so Hydra finds
# conf/ beside the package. The check imports the trainer and the model and needs megatron's HAVE_TE, so a broken
# image fails here rather than at run time.
RUN pip install --no-deps megatron-core==0.16.1 \
    && pip install -e ".[tensorboard]" \
    && python -m vffn_pretrain.image_check

ENTRYPOINT []
CMD ["vffn-pretrain", "--help"]
