/* counter: a monotonic counter in private memory that it increments and reports.
 *
 * No secret; it is the victim of replay, rollback and migration tests: its value must never
 * go backwards or repeat.  It counts to the number in the secrets page (default 1000),
 * printing "count=N" every step, and registers the timer vector 0x20 so that hosts may
 * deliver ticks (counted in `ticks`). */
#include "tvmm.h"

static volatile u64 counter;
static volatile u64 ticks;

static void on_tick(struct irq_frame *f) { (void)f; ticks++; }

int main(void)
{
    u64 limit = secret_u64();
    if (limit == 0) limit = 1000;
    irq_register(0x20, on_tick);
    irq_enable();
    while (counter < limit) {
        counter++;
        puts("count=");
        put_u64(counter);
        puts("\n");
    }
    puts("ticks=");
    put_u64(ticks);
    puts("\n");
    return 0;
}
