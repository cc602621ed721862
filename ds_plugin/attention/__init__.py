"""MLA attention: one vLLM backend whose decode is served by one adapter of a kernel family.

    mla_family.py      the family (vLLM-free): capability table, default table, selection,
                       the shared latent-cache write; the adapters:
    mla_triton.py        ours (every GPU; CPUs through the Triton interpreter)
    mla_torch.py         plain torch, fp32 math (CPUs)
    mla_flashinfer.py    FlashInfer fa3 / fa2 / trtllm-gen / cutlass
    mla_flashmla.py      DeepSeek's FlashMLA (Hopper, pinned)
    mla_backend.py     the vLLM classes (backend, metadata builder, impl) on the seam
"""
