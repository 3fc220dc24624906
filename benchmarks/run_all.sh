#!/usr/bin/env bash
# Every benchmark in one command (about 50 minutes on a 2-core CPU); Markdown to stdout.
#   pip install -e ".[all]" -r benchmarks/requirements.txt && bash benchmarks/run_all.sh | tee results.md
# GPU mode of the training benchmark: python benchmarks/train.py --device gpu --precision mixed_float16
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
date -u; python -c 'import platform, tensorflow, keras; print(platform.processor() or platform.machine(), "TF", tensorflow.__version__, "Keras", keras.__version__)'
python benchmarks/train.py --model resnet164 --model resnet50
python benchmarks/train.py --model resnet164 --model resnet20 --batch-size 64,128 --peers ours,torch --profile
# the AVX2 kernels on an AVX-512 CPU (a no-op on an AVX2 one); TF_ENABLE_ONEDNN_OPTS=0 shows TensorFlow's own kernels
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/train.py --model resnet164 --model resnet20 --batch-size 64,128 --peers ours,torch
python benchmarks/train.py --model resnet164 --model resnet20 --model resnet50 --peers ours,torch --precision float32,mixed_bfloat16 --repeats 2
python benchmarks/kernel_threads.py   # each kernel at 1 and 2 threads, TensorFlow against PyTorch
python benchmarks/pipeline.py
python benchmarks/resnet1001.py
python benchmarks/export_time.py --depth 164 --depth 1001
python benchmarks/build.py
python benchmarks/deep.py --model resnet1001 --modes plain,stacked,stacked_remat --steps 6
python benchmarks/tf_stacked.py --rounds 8 --steps 6 --variants plain,stacked --profile
python benchmarks/bn_sync.py --model resnet164 --rounds 10 --steps 6
python benchmarks/startup.py --rounds 7
python benchmarks/serve.py --rounds 3
python benchmarks/keras_export.py
python benchmarks/int8_onnx_schemes.py resnet50
python benchmarks/tf_serving_cold.py --rounds 3   # --baseline DIR: an earlier commit's export time side by side
