#ifndef ALCUB3_KEEPER_H
#define ALCUB3_KEEPER_H

#include <sys/types.h>

/* A service's container outlives the service (a restart adopts it), and its
   exit code must too. The keeper is a forked process of the service that
   stays out of the sandbox: a child subreaper in a session of its own, it
   runs `runc create` (argv, with the given stdio), reports runc's exit code,
   then waits for the container's init (pid_file) that runc left to it, writes
   its exit code (or 128 + signal) to status_file and exits with it. SIGTERM,
   SIGINT, SIGHUP and SIGQUIT sent to it go to the init.

   Returns the keeper's pid once runc create has ended (*runc_code: its exit
   code; anything but 0 and the keeper has exited with it), or -1 and errno. */
pid_t alcub3_keeper_start(const char *runc, char *const argv[], char *const envp[], int stdin_fd, int stdout_fd, int stderr_fd,
                          const char *pid_file, const char *status_file, int *runc_code);

#endif
