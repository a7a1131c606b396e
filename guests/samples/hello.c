/* hello: prints to the console and exits 0. No secret. */
#include "tvmm.h"

int main(void)
{
    puts("hello from a tvmm guest\n");
    return 0;
}
