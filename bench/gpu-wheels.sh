#!/usr/bin/env bash
# Prepare, on a machine with the package registry, what bench/gpu.sh needs on the GPU host,
# which has no network: the cp312 manylinux wheels of the project's dependencies the host
# lacks, and the embedded model's tokenizer and chat template (random-weight models are
# built there around them). Everything lands in one ignored folder, checked to stay under
# 60 MiB (the host takes at most 64 MiB of ignored files beside the working tree).
#
# Usage (from anywhere): bench/gpu-wheels.sh [FOLDER]   (default: .gpu-take)
# Prints the folder to take along, relative to the repository root, as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

take="${1:-.gpu-take}"
limit_mib=60
py=.venv/bin/python
[ -x "$py" ] || { scripts/setup.sh >&2; }

# What the host lacks (see docs/deploy.md, "The GPU check"): it has numpy, tokenizers,
# sentencepiece, jinja2, prometheus-client, pyyaml, tqdm, typing-extensions (torch and
# transformers need them). Pinned to the versions this checkout's .venv runs, so the host
# runs what the tests ran. discord.py and its aiohttp closure are left out on purpose:
# nothing gpu.sh runs imports them (bench/gpu_steps.py checks the import closure there).
names=(ctranslate2 pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
       annotated-types typing-extensions aiosqlite gguf)
pins=()
for name in "${names[@]}"; do
    version=$("$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
        "$name")
    pins+=("$name==$version")
done

rm -rf "$take"
mkdir -p "$take/wheels" "$take/tokenizer"
# manylinux2014 alone misses ctranslate2 4.8.5, which ships manylinux_2_27/2_28 wheels only.
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$take/wheels" "${pins[@]}" >&2

# The embedded model's tokenizer and template (written by its conversion into data/models).
model_dir=$("$py" -c '
from pathlib import Path
from bot.model.embedded import prepare_default_model
print(prepare_default_model(Path("data/models"), "int8", progress=lambda _m: None))')
cp "$model_dir/tokenizer.json" "$take/tokenizer/"
[ -f "$model_dir/chat_template.jinja" ] && cp "$model_dir/chat_template.jinja" "$take/tokenizer/"
"$py" - "$model_dir/bot_model.json" "$take/tokenizer/tokens.json" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1], encoding="utf-8"))
keep = ("bos_token", "eos_token", "unk_token", "end_tokens", "add_bos_token", "context_length")
json.dump({k: meta.get(k) for k in keep}, open(sys.argv[2], "w", encoding="utf-8"), indent=2)
EOF

for pin in "${pins[@]}"; do
    file=$(printf '%s' "${pin%%==*}" | tr '-' '_')
    ls "$take/wheels/" | grep -qi "^${file}-" || { echo "missing wheel for $pin" >&2; exit 1; }
done
(cd "$take/wheels" && sha256sum ./*.whl) > "$take/SHA256SUMS"
printf '%s\n' "${pins[@]}" > "$take/wheels/requirements.txt"

total=$(du -sb "$take" | cut -f1)
echo "$take: $(ls "$take/wheels"/*.whl | wc -l) wheels, $((total / 1024)) KiB in all" >&2
if [ "$total" -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "$take is over $limit_mib MiB: too large to take to the GPU host" >&2
    exit 1
fi
echo "$take"
