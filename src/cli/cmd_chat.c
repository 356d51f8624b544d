/* cmd_chat.c - placeholder until the subcommand lands. */
#include "cli.h"

int cmd_chat(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "nvlm: chat: not built yet\n");
    return 1;
}
