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
#
# NGC's entrypoint is kept (CUDA forward compatibility on older drivers, the shared-memory warning).
# megatron-core 0.16.1 accepts transformer-engine >=2.9,<2.12. The image's own is kept when it is in that range;
# otherwise TE_SPEC is built from source here (the NGC image has the CUDA toolkit; it takes a while). NGC's pip
# constraint file pins the image's own transformer-engine, so that one install runs without it.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}
ARG TE_SPEC="transformer-engine[pytorch]>=2.9.0,<2.12.0"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

WORKDIR /workspace/vffn-pretrain
COPY pyproject.toml README.md ./
COPY vffn_pretrain ./vffn_pretrain
COPY data_tools ./data_tools
COPY conf ./conf
COPY launch ./launch
COPY benchmarks ./benchmarks

# Keep the image's torch, transformer-engine and apex: install only what they lack. Editable, so Hydra finds
# conf/ beside the package. The check imports the trainer and the model and needs megatron's HAVE_TE with a
# transformer-engine version megatron-core accepts, so a broken image fails here rather than at run time.
RUN pip install --no-deps megatron-core==0.16.1 \
    && pip install -e ".[tensorboard]" \
    && (python -m vffn_pretrain.image_check --te-version-only \
        || PIP_CONSTRAINT= pip install --no-build-isolation "${TE_SPEC}") \
    && python -m vffn_pretrain.image_check

CMD ["vffn-pretrain", "--help"]
