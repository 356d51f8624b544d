/*
 * cli.h - the `nvlm` command line: one file per subcommand, each `int cmd_NAME(argc, argv)`
 * with argv[0] = the subcommand name. Exit status 0 on success, 1 on failure (one-line error
 * on stderr), 2 on a usage error. Only the public API is used.
 */
#ifndef NVLM_CLI_H
#define NVLM_CLI_H

#include "nvlm/nvlm.h"

#include <stdio.h>

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

/* Prints "nvlm: <what>: <status text>: <last error>" to stderr and returns 1. */
int cli_fail(const char *what, nvlm_status st, const void *handle);
/* nvlm_context_create with cp, or on failure prints "nvlm: <what>: <status text>" with the
 * backend's reason (nvlm_backend_probe) to stderr and returns the status. */
nvlm_status cli_context(const char *what, const nvlm_context_params *cp, nvlm_context **out);
/* Parses a device list "0,1,2,3" into out (at most cap); the count, or -1 when malformed. */
int cli_parse_devices(const char *text, int32_t *out, int cap);
/* Parses --precision's value ("exact" or "fast"); 0 on success, else prints a usage line for
 * command `cmd` and returns 2. */
int cli_parse_precision(const char *cmd, const char *text, nvlm_precision *out);
/* Parses --weights TEXT ("auto", "bf16", "fp8") into *out; false when unknown. */
int cli_parse_weights(const char *text, nvlm_weight_type *out);
/* Whether argv[i] is -h/--help. */
int cli_is_help(const char *arg);

#endif
