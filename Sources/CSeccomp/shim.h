/* libseccomp as a Swift module. Its variadic seccomp_rule_add does not import;
   CAlcub3/alcub3_seccomp.c wraps the forms alcub3 uses. */
#include <seccomp.h>
