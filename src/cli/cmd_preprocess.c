/* cmd_preprocess.c - placeholder until the subcommand lands. */
#include "cli.h"

int cmd_preprocess(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm: preprocess: not built yet\n");
    return 1;
}
