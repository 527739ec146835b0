"""Issue 7's measured property of the demo model: at Q4_K_M without an importance matrix it answers "What is the
capital of France?" in broken French; with an importance matrix computed by ggufkit from one chunk of Hamlet it
answers "Paris". (llama.cpp's own llama-imatrix + llama-quantize show the same; the founders' notes record it.)

One 512-token chunk is enough: measured with 1, 2, 4 and 8 chunks, every one answers "Paris"."""
from __future__ import annotations

from convert_fixtures import OUT_DIR, SHAKESPEARE, converted

QUESTION = "What is the capital of France?"
CALIBRATION_CHUNKS = 1


def greedy_answer(gguf_path) -> str:
    """The model's answer through its own chat template (llama-cpp-python), greedy."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, n_threads=2, seed=0, verbose=False)
    try:
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": QUESTION}], temperature=0.0,
                                           max_tokens=32)
        return reply["choices"][0]["message"]["content"]
    finally:
        llm.close()


def test_imatrix_from_hamlet_makes_q4_k_m_answer_paris(demo_dir):
    from ggufkit.conversion import convert
    from ggufkit.quant.imatrix_collect import compute

    imatrix = compute(demo_dir, SHAKESPEARE, ctx=512, chunks=CALIBRATION_CHUNKS, progress=False)
    assert imatrix.chunk_count == CALIBRATION_CHUNKS
    imatrix_file = imatrix.save(OUT_DIR / "demo-hamlet.imatrix.gguf")
    weighted = convert(demo_dir, OUT_DIR / "demo-Q4_K_M-imatrix.gguf", scheme="q4_k_m", quiet=True,
                       imatrix=imatrix_file)

    plain_answer = greedy_answer(converted(demo_dir, "q4_k_m"))
    weighted_answer = greedy_answer(weighted)
    assert "Paris" not in plain_answer, plain_answer  # e.g. "La femme de France, le Grand Croix, ..."
    assert "Paris" in weighted_answer, weighted_answer  # "The capital of France is Paris."
