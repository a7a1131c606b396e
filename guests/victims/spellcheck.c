/* spellcheck: a passphrase spell-checked against a public word list with glibc's strtok,
 * bsearch and strcmp (Debian's static libc, unmodified), as a Linux program.
 *
 * The controlled-channel literature's kind of non-crypto victim: Xu, Cui and Peinado
 * (S&P 2015) read documents from Hunspell through the pages its dictionary lookups touch.
 * Secret: 4 bytes from /run/secrets/key, each one word of the 256-word list below (a
 * diceware-style passphrase of 4 words).  The driver writes the passphrase as text, splits
 * it into words and looks each one up in the sorted list (64-byte entries: the list spans 4
 * pages).  Prints result=<words found>/<words>: 4/4 for every passphrase. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char word[64];
};

static const struct entry WORDS[256] __attribute__((aligned(4096))) = {
    {"bamen"}, {"bamur"}, {"baner"}, {"baris"}, {"bavan"}, {"belos"}, {"bonur"}, {"bunus"},
    {"dabis"}, {"dazin"}, {"defar"}, {"deten"}, {"devur"}, {"dezan"}, {"digas"}, {"diker"},
    {"divis"}, {"dokar"}, {"dozin"}, {"dufur"}, {"dupas"}, {"dutor"}, {"fadas"}, {"fafes"},
    {"fagir"}, {"falas"}, {"fefos"}, {"fekis"}, {"felir"}, {"fenis"}, {"fesos"}, {"fesus"},
    {"feven"}, {"finan"}, {"firun"}, {"fisen"}, {"fofon"}, {"fokis"}, {"foman"}, {"fopin"},
    {"fosar"}, {"fozan"}, {"fudus"}, {"fufar"}, {"fugun"}, {"futes"}, {"gaken"}, {"gamen"},
    {"gapor"}, {"garun"}, {"gasir"}, {"gavor"}, {"gedur"}, {"gemur"}, {"gevan"}, {"gifos"},
    {"ginun"}, {"gizur"}, {"gokas"}, {"goner"}, {"goris"}, {"gumis"}, {"guten"}, {"kadar"},
    {"kages"}, {"kamin"}, {"kapus"}, {"karin"}, {"kater"}, {"kebin"}, {"kedur"}, {"kegen"},
    {"kekin"}, {"kezer"}, {"kobos"}, {"kofer"}, {"kokir"}, {"kolos"}, {"konen"}, {"koras"},
    {"lakes"}, {"lapun"}, {"ledin"}, {"lefis"}, {"lelor"}, {"lemus"}, {"leses"}, {"lezun"},
    {"lidon"}, {"limis"}, {"limus"}, {"livis"}, {"lodur"}, {"lonen"}, {"losir"}, {"lufes"},
    {"mabur"}, {"maron"}, {"mazas"}, {"mazis"}, {"megar"}, {"menas"}, {"mepar"}, {"mepos"},
    {"meres"}, {"mesis"}, {"metis"}, {"mezar"}, {"milon"}, {"mimon"}, {"mivus"}, {"mobor"},
    {"mogor"}, {"motus"}, {"movin"}, {"muder"}, {"naben"}, {"nason"}, {"nater"}, {"nepon"},
    {"netir"}, {"nigin"}, {"nigon"}, {"nikir"}, {"nilur"}, {"niman"}, {"nimon"}, {"nofon"},
    {"nofor"}, {"nolan"}, {"nonen"}, {"nonon"}, {"norin"}, {"norun"}, {"nubus"}, {"nupis"},
    {"pabas"}, {"pabun"}, {"padur"}, {"pasan"}, {"paser"}, {"pavan"}, {"pedes"}, {"penun"},
    {"perir"}, {"pezir"}, {"pidus"}, {"pigar"}, {"pilon"}, {"pinas"}, {"pitar"}, {"pobos"},
    {"polis"}, {"ponur"}, {"popen"}, {"pudas"}, {"puker"}, {"pupan"}, {"purar"}, {"pusar"},
    {"pusor"}, {"puvon"}, {"rafen"}, {"ratin"}, {"ravor"}, {"reken"}, {"reter"}, {"ribon"},
    {"rilan"}, {"ripos"}, {"riror"}, {"robas"}, {"rubas"}, {"ruben"}, {"rudur"}, {"ruges"},
    {"samus"}, {"sapar"}, {"saves"}, {"segur"}, {"sepin"}, {"sirar"}, {"sivar"}, {"sobor"},
    {"sofin"}, {"solan"}, {"sonis"}, {"sosur"}, {"sozor"}, {"sunar"}, {"sunen"}, {"sunis"},
    {"suson"}, {"suzon"}, {"tafor"}, {"takar"}, {"taker"}, {"taves"}, {"tedor"}, {"tesas"},
    {"tezon"}, {"tikon"}, {"tilur"}, {"tipur"}, {"titun"}, {"tizer"}, {"tofus"}, {"tozun"},
    {"tufas"}, {"tufon"}, {"tumos"}, {"tuzes"}, {"tuzis"}, {"vadin"}, {"vagan"}, {"vakes"},
    {"vatur"}, {"vedur"}, {"vefur"}, {"velun"}, {"veron"}, {"veten"}, {"vevir"}, {"vezes"},
    {"vidus"}, {"vipon"}, {"vizan"}, {"vizur"}, {"voger"}, {"vogur"}, {"vokir"}, {"vosis"},
    {"votir"}, {"vugus"}, {"vulor"}, {"vunor"}, {"vunos"}, {"vupur"}, {"vuzun"}, {"zafur"},
    {"zages"}, {"zamur"}, {"zatus"}, {"zebar"}, {"zedon"}, {"zepos"}, {"zezir"}, {"zilen"},
    {"zinun"}, {"zisus"}, {"zodun"}, {"zokus"}, {"zozun"}, {"zufor"}, {"zunar"}, {"zupan"},
};

static int compare(const void *key, const void *item)
{
    return strcmp((const char *)key, ((const struct entry *)item)->word);
}

int main(void)
{
    unsigned char secret[4];
    char text[4 * 64];
    size_t n, at = 0, found = 0, words = 0;
    FILE *f = fopen("/run/secrets/key", "rb");

    if (!f)
        return 3;
    n = fread(secret, 1, sizeof secret, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(text + at, sizeof text - at, "%s%s", i ? " " : "",
                               WORDS[secret[i]].word);
    for (char *w = strtok(text, " "); w; w = strtok(NULL, " ")) {
        words++;
        if (bsearch(w, WORDS, 256, sizeof WORDS[0], compare))
            found++;
    }
    printf("result=%zu/%zu\n", found, words);
    return 0;
}
