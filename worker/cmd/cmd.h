/* cmd.h - the subcommands of build/halflife (DESIGN.md section 7).
 * Each takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit status: 0 success, 1 failure, 2 usage error.
 * Each lives in worker/cmd/<name>.c. */
#ifndef HL_CMD_H
#define HL_CMD_H

/* Restores the signal mask the process started with: main.c blocks
 * SIGTERM, SIGINT and SIGHUP before anything runs; a command that installs
 * handlers calls this once they are in place (run.c), main does for the
 * others. */
void hl_cmd_signals_unblock(void);

int hl_cmd_run(int argc, char **argv);
int hl_cmd_demo(int argc, char **argv);
int hl_cmd_broker(int argc, char **argv);
int hl_cmd_produce(int argc, char **argv);
int hl_cmd_train(int argc, char **argv);
int hl_cmd_eval(int argc, char **argv);
int hl_cmd_snapshot(int argc, char **argv);
int hl_cmd_model(int argc, char **argv);
int hl_cmd_items(int argc, char **argv);

#endif
