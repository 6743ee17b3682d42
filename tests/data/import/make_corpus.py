"""Writes the corpus of awkward opt-out lists in this folder (run once; the output is committed).

Each file is spelled out byte for byte below, so its expected counts in expected.json can be
worked out by reading this script. Run: python tests/data/import/make_corpus.py
"""

from __future__ import annotations

import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(name: str, lines: list[str], encoding: str = "utf-8", newline: str = "\n", final_newline: bool = True) -> None:
    """Join `lines` with `newline` and write them in `encoding` (BOM included when the codec writes one)."""
    text = newline.join(lines) + (newline if final_newline else "")
    (HERE / name).write_bytes(text.encode(encoding))


def main() -> None:
    # Excel "CSV UTF-8": BOM, comma; non-ASCII names; one address in mixed case.
    write("utf8_bom_comma.csv", [
        "Name,Email,Signed up",
        "Åse Øster,ase@example.dk,2023-01-04",
        "Jürgen Groß,juergen@example.de,2023-02-11",
        "Zoë Brontë,zoe@example.org,2023-03-15",
        "Mia Lund,MIA@Example.com,2023-04-02",
        "Omar Haddad,omar@example.net,2023-05-20",
    ], encoding="utf-8-sig")

    # UTF-8 without BOM, semicolons, German header, decimal commas and an unquoted comma in a name.
    write("utf8_semicolon.csv", [
        "Kunde;E-Mail-Adresse;Umsatz",
        "Jürgen Groß;juergen@example.de;1.234,50",
        "Ärzte GmbH, Köln;info@aerzte-koeln.de;99,00",
        "Björn Nilsson;bjorn@example.se;0,00",
        "Straße & Co;kontakt@strasse.example;12,5",
    ])

    # Excel "Unicode text": UTF-16 LE with BOM, tabs, CRLF, Excel's quoting of quotes and commas.
    write("excel_unicode_text.txt", [
        "Name\tE-mail\tNote",
        "Søren Kierkegaard\tsoren@example.dk\tasked by phone",
        '"Li, Wei"\twei.li@example.cn\t"said ""stop"""',
        "Ξένια\txenia@example.gr\t",
        "山田太郎\tyamada@example.jp\tnote",
    ], encoding="utf-16", newline="\r\n")
    assert (HERE / "excel_unicode_text.txt").read_bytes().startswith(b"\xff\xfe")

    # UTF-16 BE with BOM, tabs, address in the first column.
    (HERE / "utf16be_tab.txt").write_bytes(b"\xfe\xff" + "E-mail\tName\nanna@example.com\tAnna\nbo@example.com\tBo\n".encode("utf-16-be"))

    # Windows-1252 (Danish Excel's default): semicolons, æøå, the euro sign, an address with ø.
    write("cp1252_names.csv", [
        "Navn;Email;Beløb",
        "Søren Ærø;soren.aero@example.dk;100 €",
        "Åse Møller;ase.moller@example.dk;50 €",
        "François Lefèvre;francois@example.fr;0 €",
        "Zoë Ñúñez;zoe.nunez@example.es;12 €",
        "Jørgen Ølgaard;jørgen@example.dk;7 €",
    ], encoding="cp1252")

    # Quoted cells with commas, doubled quotes and newlines: 4 data rows on rows 2-5, lines 2-9.
    write("quoted_multiline.csv", [
        "Name,Email,Comment",
        '"Hansen, Jens",jens@example.dk,"Called on Monday,',
        'asked to be removed"',
        '"O""Brien, Pat","pat.obrien@example.ie","said ""never again"""',
        '"Multi',
        "line",
        'name",multi@example.com,',
        'Plain,plain@example.com,"a, b, c"',
    ])

    # CRLF everywhere, including inside a quoted cell.
    write("crlf.csv", [
        "email,first_name",
        "one@example.com,One",
        'two@example.com,"Two\r\nlines"',
        "three@example.com,Three",
    ], newline="\r\n")

    # Blank lines (rows 3, 8, 9), a row of empty cells (6), a short row (5), an empty address (10).
    write("blank_and_short.csv", [
        "Name,Email,Phone",
        "Ann,ann@example.com,111",
        "",
        "Ben,ben@example.com,222",
        "Carl",
        ",,",
        "Dora,dora@example.com",
        "",
        "",
        "Eve,,333",
        "Finn,finn@example.com,444",
    ])

    # One column with a header; the same addresses in other case and with white space around them.
    write("duplicates.csv", [
        "Email",
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "  alice@example.com  ",
        "Bob@Example.org",
        "bob@example.org",
        '"  carol@example.net"',
        "carol@example.net",
        "dave@example.com",
    ])

    # Seven kinds of invalid address among three good ones.
    write("invalid.csv", [
        "Name,Email",
        "Good One,good@example.com",
        "No At,no-at-sign.example.com",
        "Two Ats,two@@example.com",
        "Space,has space@example.com",
        "No Dot,user@localhost",
        "Empty Local,@example.com",
        "Trailing Dot,dot.@example.com",
        "Good Two,good2@example.com",
        "Good Three,good3@example.org",
        "Too long," + "a" * 65 + "@example.com",
    ])

    # The header of the issue, CRLF, one duplicate in capitals and one non-address.
    write("danish_header.csv", [
        "Navn;E-mailadresse;Tilmeldt",
        "Jens Jensen;jens@example.dk;ja",
        "Mette Frederiksen;mette@example.dk;nej",
        "Søren Ølstykke;soren@example.dk;ja",
        "Ærlige Åge;aage@example.dk;ja",
        "Jens Jensen;JENS@example.dk;ja",
        "Ukendt;ukendt;nej",
    ], newline="\r\n")

    # No header: the first row is data.
    write("no_header.csv", [
        "kim@example.com,Kim,2021",
        "lars@example.com,Lars,2022",
        '"maja@example.com","Maja",2023',
        "not-an-address,Nobody,2024",
    ])

    # Two columns of addresses: the reader must ask which one.
    write("two_address_columns.csv", [
        "Name,Email,Manager email",
        "Ann,ann@example.com,boss@example.com",
        "Ben,ben@example.com,boss@example.com",
        "Cy,cy@example.com,",
    ])

    # Bare addresses, no header, no delimiter, no newline at the end.
    write("bare_addresses.txt", [
        "x1@example.com",
        "x2@example.com",
        "X1@EXAMPLE.COM",
        "x3@example.com",
    ], final_newline=False)

    # Excel-style: a formatted range saved with empty trailing columns and empty rows, CRLF.
    write("excel_trailing_columns.csv", [
        "First name,Last name,Email,,,",
        "Ann,Berg,ann.berg@example.com,,,",
        "Bo,Dahl,bo.dahl@example.com,,,",
        ",,,,,",
        "Cai,Eng,CAI.ENG@example.com,,,",
        "Ann,Berg,ann.berg@example.com ,,,",
        ",,,,,",
        ",,,,,",
    ], newline="\r\n")

    # Classic Mac line ends: a lone CR.
    write("mac_classic_cr.csv", [
        "Email,Name",
        "p@example.com,P",
        "q@example.com,Q",
    ], newline="\r")

    # French header, pipes, one empty address.
    write("french_pipe.csv", [
        "Nom|Adresse e-mail|Date d'inscription",
        "Élodie Dupont|elodie@example.fr|2022-03-01",
        "Gaëlle Martin|gaelle@example.fr|2022-04-12",
        "Hélène Petit|helene@example.fr|",
        "Inès Roux||2022-05-05",
    ])

    write_workbook()


def write_workbook() -> None:
    """An .xlsx with empty rows, a number and a date cell, and a second sheet that must be ignored."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Opt-outs"
    day = datetime.date(2024, 1, 15)
    sheet.append(["Navn", "E-mail", "Dato"])          # row 1
    sheet.append(["Anna", "anna@example.dk", day])    # row 2
    sheet.append([])                                  # row 3, empty
    sheet.append(["Bent", "BENT@example.dk", day])    # row 4
    sheet.append(["Carla", "carla@example", day])     # row 5, invalid: no dot in the domain
    sheet.append(["Anna igen", "anna@example.dk"])    # row 6, duplicate of row 2
    sheet.append([])                                  # row 7, empty
    sheet.append(["Dorte", "dorte@example.dk", 42])   # row 8
    notes = book.create_sheet("Notes")
    notes.append(["not", "an", "address"])
    notes.append(["nobody@example.com"])
    book.save(HERE / "workbook.xlsx")


if __name__ == "__main__":
    main()
