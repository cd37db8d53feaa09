#!/usr/bin/env python3
"""Generates a region-sized AAF "Complet" export (made-up people) for the import benchmark.

Usage: gen_aaf.py OUT_DIR [PEOPLE] [UAI]
Writes ENT_<UAI>_Complet_<date>_{Eleve,PersRelEleve,PersEducNat,EtabEducNat}_0000.xml with about
PEOPLE people in all (60 % pupils, 35 % guardians, 5 % staff), streaming so memory stays flat.
"""
import os
import random
import sys

FIRST = ["Léa", "Zoé", "Éloïse", "Chloé", "Inès", "Jade", "Louise", "Emma", "Noé", "Hugo", "Gabriel", "Raphaël",
         "Arthur", "Jules", "Maël", "Théo", "Loïc", "Anaïs", "Gaëlle", "Jean-Éric", "Mathéo", "Lucas", "Nolan"]
LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
        "Simon", "Laurent", "Lefèvre", "Michel", "García", "David", "Bertrand", "Roux", "N'Diaye", "Le Goff",
        "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Müller"]
SUBJECTS = ["MATHEMATIQUES", "FRANCAIS", "HISTOIRE-GEOGRAPHIE", "ANGLAIS LV1", "SVT", "PHYSIQUE-CHIMIE", "EPS"]


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def entry(out, category, ident, attrs):
    out.write('<addRequest><operationalAttributes><attr name="categoriePersonne"><value>%s</value></attr>'
              '</operationalAttributes><identifier><id>%s</id></identifier><attributes>\n' % (category, ident))
    for name, values in attrs:
        if isinstance(values, str):
            values = [values]
        out.write('<attr name="%s">%s</attr>\n' % (name, "".join("<value>%s</value>" % esc(v) for v in values)))
    out.write("</attributes></addRequest>\n")


def header(out):
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<ficAlimMENESR xmlns="http://www.education.gouv.fr/ficAlimMENESR">\n')


def main():
    out_dir = sys.argv[1]
    people = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    uai = sys.argv[3] if len(sys.argv) > 3 else "0123456A"
    rng = random.Random(42)
    os.makedirs(out_dir, exist_ok=True)
    pupils = people * 60 // 100
    guardians = people * 35 // 100
    staff = people - pupils - guardians
    classes = ["%d%s" % (level, letter) for level in range(3, 7) for letter in "ABCDEFGHJKLMNPQRSTUVWXYZ"]
    prefix = os.path.join(out_dir, "ENT_%s_Complet_20260901_" % uai)
    parent_of = {}
    with open(prefix + "Eleve_0000.xml", "w", encoding="utf-8") as out:
        header(out)
        for i in range(pupils):
            pid = "E%07d" % i
            parents = ["R%07d" % ((i * 7 + k) % guardians) for k in range(rng.choice([1, 2]))]
            for p in parents:
                parent_of.setdefault(p, []).append(pid)
            cls = classes[i % len(classes)]
            entry(out, "Eleve", pid, [
                ("ENTPersonJointure", pid), ("sn", rng.choice(LAST)), ("givenName", rng.choice(FIRST)),
                ("ENTPersonDateNaissance", "%02d/%02d/%d" % (rng.randint(1, 28), rng.randint(1, 12), rng.randint(2008, 2014))),
                ("ENTPersonStructRattach", uai), ("ENTEleveClasses", "%s$%s" % (uai, cls)),
                ("ENTEleveGroupes", "%s$%s-G%d" % (uai, cls, rng.randint(1, 2))),
                ("ENTElevePersRelEleve", parents),
            ])
        out.write("</ficAlimMENESR>\n")
    with open(prefix + "PersRelEleve_0000.xml", "w", encoding="utf-8") as out:
        header(out)
        for i in range(guardians):
            rid = "R%07d" % i
            entry(out, "PersRelEleve", rid, [
                ("ENTPersonJointure", rid), ("sn", rng.choice(LAST)), ("givenName", rng.choice(FIRST)),
                ("mail", "parent%d@example.org" % i), ("ENTAuxPersRelEleveEleve", parent_of.get(rid, [])),
            ])
        out.write("</ficAlimMENESR>\n")
    with open(prefix + "PersEducNat_0000.xml", "w", encoding="utf-8") as out:
        header(out)
        for i in range(staff):
            sid = "P%07d" % i
            teacher = i % 5 != 0
            attrs = [("ENTPersonJointure", sid), ("sn", rng.choice(LAST)), ("givenName", rng.choice(FIRST)),
                     ("mail", "agent%d@ac-exemple.fr" % i), ("ENTPersonStructRattach", uai)]
            if teacher:
                taught = rng.sample(classes, 3)
                attrs.append(("ENTAuxEnsClassesMatieres", ["%s$%s$%s" % (uai, c, rng.choice(SUBJECTS)) for c in taught]))
                attrs.append(("ENTAuxEnsClassesPrincipal", ["%s$%s" % (uai, taught[0])] if i % 3 == 0 else []))
                attrs.append(("ENTPersonFonctions", "%s$ENS$ENSEIGNEMENT" % uai))
            else:
                attrs.append(("ENTPersonFonctions", "%s$DIR$DIRECTION" % uai))
            entry(out, "Enseignant" if teacher else "PersonnelAdministratif", sid, attrs)
        out.write("</ficAlimMENESR>\n")
    with open(prefix + "EtabEducNat_0000.xml", "w", encoding="utf-8") as out:
        header(out)
        out.write('<addRequest><identifier><id>%s</id></identifier><attributes>'
                  '<attr name="ENTStructureUAI"><value>%s</value></attr>'
                  '<attr name="ENTStructureNomCourant"><value>COLLEGE DE SAINT-EXEMPLE</value></attr>'
                  '</attributes></addRequest>\n</ficAlimMENESR>\n' % (uai, uai))
    print("%d pupils, %d guardians, %d staff in %s" % (pupils, guardians, staff, out_dir))


if __name__ == "__main__":
    main()
