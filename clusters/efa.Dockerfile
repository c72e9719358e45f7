# The GPU workers' image for multi-node runs on p4d and p5: Ray's CUDA 12.8 image with AWS's EFA
# software, so that NCCL between nodes goes over EFA (the aws-ofi-nccl plugin on libfabric) and
# not over TCP sockets. Without it a 64-GPU run spends most of each step in the all-reduce
# (clusters/README.md, "The network").
#
# Built from the repository root (it copies clusters/requirements.lock), and pushed to your ECR:
#   docker build -f clusters/efa.Dockerfile -t ACCOUNT_ID.dkr.ecr.us-west-2.amazonaws.com/gpt1-efa:ray2.60.0-cu128 .
# gpu.yaml's p4d and p5 node types run it with the EFA devices (/dev/infiniband/uverbs*) and the
# FI_/NCCL_ settings. The host needs the EFA kernel driver, which the Deep Learning Base AMI has:
# a container cannot load a kernel module, hence --skip-kmod.
FROM rayproject/ray:2.60.0-py311-cu128

# Versions pinned so that every node of a run has the same network stack; raise them together.
ARG EFA_INSTALLER_VERSION=1.38.0
ARG AWS_OFI_NCCL_VERSION=1.13.0

USER root
RUN apt-get update -y \
    && apt-get install -y --no-install-recommends curl ca-certificates libhwloc-dev pciutils \
    && rm -rf /var/lib/apt/lists/*

# libfabric with the EFA provider (and Open MPI, unused). --skip-kmod: no kernel module in a
# container; --skip-limit-conf: the locked-memory limit is the container's (--ulimit memlock=-1
# in gpu.yaml); --no-verify: the device check uses lspci, which sees no EFA device at build time.
RUN mkdir -p /tmp/efa && cd /tmp/efa \
    && curl -fsSL -o efa.tar.gz "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \
    && tar -xf efa.tar.gz && cd aws-efa-installer \
    && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify \
    && cd / && rm -rf /tmp/efa

# NCCL's network plugin for libfabric, built against this image's CUDA. NCCL finds it by name
# (libnccl-net.so) on the library path.
RUN test -f /usr/local/cuda/include/cuda.h || { echo "the base image has no CUDA headers: use a -devel base" >&2; exit 1; } \
    && mkdir -p /tmp/ofi && cd /tmp/ofi \
    && curl -fsSL -o ofi.tar.gz "https://github.com/aws/aws-ofi-nccl/releases/download/v${AWS_OFI_NCCL_VERSION}-aws/aws-ofi-nccl-${AWS_OFI_NCCL_VERSION}.tar.gz" \
    && tar -xf ofi.tar.gz && cd "aws-ofi-nccl-${AWS_OFI_NCCL_VERSION}" \
    && ./configure --prefix=/opt/aws-ofi-nccl --with-libfabric=/opt/amazon/efa \
        --with-cuda=/usr/local/cuda --enable-platform-aws --disable-tests \
    && make -j"$(nproc)" && make install \
    && cd / && rm -rf /tmp/ofi \
    && printf '/opt/amazon/efa/lib\n/opt/aws-ofi-nccl/lib\n' > /etc/ld.so.conf.d/efa-nccl.conf && ldconfig \
    && test -f /opt/aws-ofi-nccl/lib/libnccl-net.so
ENV LD_LIBRARY_PATH=/opt/aws-ofi-nccl/lib:/opt/amazon/efa/lib:${LD_LIBRARY_PATH}
ENV PATH=/opt/amazon/efa/bin:${PATH}

# What every node's setup would install, baked in: the same lock as the other nodes, then torch in
# the build for the image's CUDA. gpu.yaml's setup commands then find them in place (seconds, not
# the minutes a fresh install takes on every node start).
USER ray
COPY --chown=ray clusters/requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --quiet -r /tmp/requirements.lock \
    && pip install --no-cache-dir --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
    && rm /tmp/requirements.lock
