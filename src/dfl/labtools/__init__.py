"""The lab's pencil-and-paper tools, answered by code: a convolution by hand
(`conv_arithmetic`), a model's shapes and costs layer by layer (`shapes`), and self-attention
in NumPy against PyTorch (`attention_check`).

They read models and configs and train nothing; the commands (`dfl conv`, `dfl shapes`,
`dfl attention`) and the experiments use them."""
