// chat.cpp - a small C++ chat loop over the installed nvlm C API (public header only).
//
//   c++ -std=c++17 chat.cpp $(pkg-config --cflags --libs nvlm) -o chat
//   ./chat MODEL_DIR            (lines are user turns; "/image PATH" attaches an image,
//                                "/reset" starts over, end of input quits)
//
// RAII wrappers free every handle; the session keeps the KV cache between turns, so each
// turn prefills only its new tokens.
#include <nvlm/nvlm.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace {

struct ContextFree {
    void operator()(nvlm_context *c) const { nvlm_context_free(c); }
};
struct ModelFree {
    void operator()(nvlm_model *m) const { nvlm_model_free(m); }
};
struct SessionFree {
    void operator()(nvlm_session *s) const { nvlm_session_free(s); }
};
struct ImageFree {
    void operator()(nvlm_image *i) const { nvlm_image_free(i); }
};

using Context = std::unique_ptr<nvlm_context, ContextFree>;
using Model = std::unique_ptr<nvlm_model, ModelFree>;
using Session = std::unique_ptr<nvlm_session, SessionFree>;
using Image = std::unique_ptr<nvlm_image, ImageFree>;

int report(const char *what, nvlm_status st, const void *handle)
{
    std::cerr << "chat: " << what << ": " << nvlm_status_str(st) << " ("
              << nvlm_last_error(handle) << ")\n";
    return 1;
}

int on_token(void *, int32_t, const char *text, size_t len)
{
    std::fwrite(text, 1, len, stdout);
    std::fflush(stdout);
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR\n";
        return 2;
    }
    nvlm_context *raw_ctx = nullptr;
    nvlm_status st = nvlm_context_create(nullptr, &raw_ctx);
    if (st != NVLM_OK) {
        std::cerr << "chat: " << nvlm_status_str(st) << "\n";
        return 1;
    }
    Context ctx(raw_ctx);
    nvlm_model *raw_model = nullptr;
    st = nvlm_model_load(ctx.get(), argv[1], nullptr, &raw_model);
    if (st != NVLM_OK) {
        return report("load", st, ctx.get());
    }
    Model model(raw_model);
    nvlm_session *raw_s = nullptr;
    st = nvlm_session_create(model.get(), nullptr, &raw_s);
    if (st != NVLM_OK) {
        return report("session", st, model.get());
    }
    Session session(raw_s);
    nvlm_image_params ip;
    nvlm_image_default_params(&ip);
    nvlm_model_image_params(model.get(), &ip);

    std::vector<Image> pending;
    std::string line;
    while (std::cerr << "> ", std::getline(std::cin, line)) {
        if (line.empty()) {
            continue;
        }
        if (line == "/reset") {
            nvlm_session_reset(session.get());
            pending.clear();
            continue;
        }
        if (line.rfind("/image ", 0) == 0) {
            nvlm_image *img = nullptr;
            st = nvlm_image_load_file(ctx.get(), line.c_str() + 7, &ip, &img);
            if (st != NVLM_OK) {
                report("image", st, ctx.get());
            } else {
                pending.emplace_back(img);
            }
            continue;
        }
        std::vector<nvlm_image *> imgs;
        for (auto &p : pending) {
            imgs.push_back(p.get());
        }
        st = nvlm_session_add_turn(session.get(), NVLM_ROLE_USER, line.c_str(),
                                   imgs.empty() ? nullptr : imgs.data(), imgs.size());
        pending.clear();
        if (st != NVLM_OK) {
            report("turn", st, session.get());
            continue;
        }
        nvlm_sampler_params sp;
        nvlm_sampler_default_params(&sp);
        st = nvlm_session_generate(session.get(), &sp, on_token, nullptr, nullptr);
        std::printf("\n");
        if (st != NVLM_OK) {
            report("generate", st, session.get());
        }
    }
    return 0;
}
