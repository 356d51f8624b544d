/* cmd_generate.c - placeholder until the subcommand lands. */
#include "cli.h"

int cmd_generate(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm: generate: not built yet\n");
    return 1;
}
