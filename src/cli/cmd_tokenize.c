/* cmd_tokenize.c - placeholder until the subcommand lands. */
#include "cli.h"

int cmd_tokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm: tokenize: not built yet\n");
    return 1;
}
