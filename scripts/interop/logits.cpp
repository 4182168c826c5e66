// auralens-logits: the logits llama.cpp computes for a prompt, under llama.cpp's own options.
//
// Every llama.cpp common option works as in llama-cli (-m, -p, --control-vector,
// --control-vector-scaled, --control-vector-layer-range, -fa, -ctk/-ctv, -t ...): the
// arguments are parsed by common_params_parse and the model, context and control vectors are
// set up by common_init_from_params, the code path llama-cli uses.  The prompt is tokenized by
// llama.cpp (BOS as the vocabulary says), decoded in one batch with logits at every position,
// then AURALENS_GEN (default 0) tokens are generated greedily one at a time.
//
// Output (AURALENS_LOGITS_OUT, a file): int32 n_prompt, int32 n_gen, int32 n_vocab, the
// n_prompt + n_gen token ids (int32), then float32 logits [n_prompt + n_gen - 1 ... rows]:
// one row of n_vocab per prompt position and one per generation step (the logits that chose
// each generated token), i.e. n_prompt + n_gen rows (the last row is the prefill's last
// position when n_gen = 0).  Little-endian, as numpy reads it.
#include "arg.h"
#include "common.h"
#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static bool decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, std::vector<float> & rows,
                   int n_vocab) {
    llama_batch batch = llama_batch_init((int32_t) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); ++i) {
        batch.token[i]     = toks[i];
        batch.pos[i]       = pos0 + (llama_pos) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    batch.n_tokens = (int32_t) toks.size();
    const int rc = llama_decode(ctx, batch);
    if (rc == 0) {
        for (size_t i = 0; i < toks.size(); ++i) {
            const float * row = llama_get_logits_ith(ctx, (int32_t) i);
            rows.insert(rows.end(), row, row + n_vocab);
        }
    }
    llama_batch_free(batch);
    return rc == 0;
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    common_params params;
    common_init();
    if (!common_params_parse(argc, argv, params, LLAMA_EXAMPLE_COMMON)) {
        return 1;
    }
    const char * out_path = std::getenv("AURALENS_LOGITS_OUT");
    if (out_path == nullptr) {
        std::fprintf(stderr, "auralens-logits: set AURALENS_LOGITS_OUT to the output file\n");
        return 1;
    }
    const char * gen_env = std::getenv("AURALENS_GEN");
    const int n_gen = gen_env ? std::atoi(gen_env) : 0;
    params.warmup = false;

    llama_backend_init();
    auto init = common_init_from_params(params);
    llama_model * model = init->model();
    llama_context * ctx = init->context();
    if (model == nullptr || ctx == nullptr) {
        std::fprintf(stderr, "auralens-logits: failed to load the model or the control vectors\n");
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> prompt = common_tokenize(ctx, params.prompt, llama_vocab_get_add_bos(vocab), true);
    if (prompt.empty()) {
        std::fprintf(stderr, "auralens-logits: empty prompt (-p)\n");
        return 1;
    }
    std::vector<float> rows;
    if (!decode(ctx, prompt, 0, rows, n_vocab)) {
        std::fprintf(stderr, "auralens-logits: llama_decode failed on the prompt\n");
        return 1;
    }
    std::vector<llama_token> gen;
    for (int t = 0; t < n_gen; ++t) {
        const float * last = rows.data() + rows.size() - n_vocab;
        int best = 0;
        for (int j = 1; j < n_vocab; ++j) {
            if (last[j] > last[best]) best = j;
        }
        gen.push_back(best);
        if (t + 1 < n_gen && !decode(ctx, {best}, (int) (prompt.size() + t), rows, n_vocab)) {
            std::fprintf(stderr, "auralens-logits: llama_decode failed at generation step %d\n", t);
            return 1;
        }
    }
    FILE * f = std::fopen(out_path, "wb");
    if (f == nullptr) {
        std::fprintf(stderr, "auralens-logits: cannot write %s\n", out_path);
        return 1;
    }
    const int32_t head[3] = { (int32_t) prompt.size(), (int32_t) gen.size(), n_vocab };
    std::fwrite(head, sizeof(int32_t), 3, f);
    std::fwrite(prompt.data(), sizeof(llama_token), prompt.size(), f);
    std::fwrite(gen.data(), sizeof(llama_token), gen.size(), f);
    std::fwrite(rows.data(), sizeof(float), rows.size(), f);
    std::fclose(f);
    llama_backend_free();
    return 0;
}
