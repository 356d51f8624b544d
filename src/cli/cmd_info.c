/* cmd_info.c - placeholder until the subcommand lands. */
#include "cli.h"

int cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm: info: not built yet\n");
    return 1;
}
